"""``xaisdk serve``: an explanation server speaking KServe V1 and the Open Inference Protocol V2, with
cross-request batching, backpressure, deadlines, Prometheus metrics and a JSON access log.

Torch-free: it needs the serving install plus the server's own packages
(``pip install 'xaisdk[serve,server]'``: FastAPI, uvicorn, prometheus-client).

>>> from xaisdk.serve import ServerConfig
>>> ServerConfig(bundle="bundle/", name="digits").timeout_s
30.0
"""

from xaisdk.serve.service import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from xaisdk.serve.app import create_app as value
    elif name == "serve":
        from xaisdk.serve.run import serve as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value
