"""shiftkey broker client: get a token by name; report a rejected one to get its replacement."""
import json, os, socket

SOCKET = os.environ.get("SHIFTKEY_BROKER_SOCKET") or os.path.join(
    os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/shiftkey-{os.getuid()}", "shiftkey", "broker.sock")

def _ask(request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(SOCKET)
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        raise RuntimeError("shiftkey broker: " + str(reply.get("error")))
    return reply["token"], reply["generation"]

def token(name):
    """(token, generation) of `name`; keep the generation to report a rejection."""
    return _ask({"op": "get", "name": name})

def rejected(name, generation):
    """The server refused `generation`: the broker refreshes once for all clients."""
    return _ask({"op": "rejected", "name": name, "generation": generation})
