"""shiftkey broker client: get a token by name; report a rejected one to get its replacement."""
import json, os, socket, struct

def _socket_path():
    explicit = os.environ.get("SHIFTKEY_BROKER_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        # No guessing in the shared temp folder: another user could sit at a predictable path.
        raise RuntimeError("shiftkey broker: set SHIFTKEY_BROKER_SOCKET (or XDG_RUNTIME_DIR)")
    return os.path.join(runtime, "shiftkey", "broker.sock")

def _ask(request, timeout=40.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(_socket_path())
        # Trust only a broker running as this user (SO_PEERCRED: pid, uid, gid).
        _pid, uid, _gid = struct.unpack("3i", s.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            raise RuntimeError(f"shiftkey broker: the socket belongs to uid {uid}, not to this user; not trusted")
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        raise RuntimeError("shiftkey broker: " + str(reply.get("error")))
    return reply["token"], reply["generation"]

def token(name):
    """(token, generation) of `name`; keep the generation to report a rejection."""
    return _ask({"op": "get", "name": name})

def rejected(name, generation, served=False):
    """The server refused `generation`: the broker refreshes once for all clients. `served`: a
    server had accepted it before (it died after serving, as in a restart)."""
    return _ask({"op": "rejected", "name": name, "generation": generation, "served": served})
