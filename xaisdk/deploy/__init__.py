"""Deployment: ONNX export with input-gradient graphs (:mod:`xaisdk.deploy.export`, needs torch and
onnx) and the bundle format (:mod:`xaisdk.deploy.bundle`, needs neither).

Nothing is imported here, so loading a bundle in a serving image never pulls in torch.
"""
