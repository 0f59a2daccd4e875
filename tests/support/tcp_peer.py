"""The host end of the TCP tests over a tap (no tests): a listener that
takes ``size`` bytes from the guest and an HTTP server that hands it
``size`` random bytes, and the guest's shell lines that drive both and
print the hashes (``g2h=``, ``wget=``, ``h2g=``)."""
import http.server
import os
import socket
import threading


class Blob(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``data`` (a subclass per content: :func:`serving`)."""

    data = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data)

    def log_message(self, *a):
        pass


def serving(data):
    """A request handler class answering every GET with ``data``."""
    return type("Blob", (Blob,), {"data": data})


class TcpPeer:
    """Listening on ``sink_port`` and serving HTTP on ``http_port`` until :meth:`close`."""

    def __init__(self, size, sink_port, http_port):
        self.size, self.sink_port, self.http_port = size, sink_port, http_port
        self.h2g = os.urandom(size)
        self.httpd = http.server.ThreadingHTTPServer(("0.0.0.0", http_port), serving(self.h2g))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.lsock = socket.create_server(("0.0.0.0", sink_port))
        self.got = []
        self.rx = threading.Thread(target=self._receive, daemon=True)
        self.rx.start()

    def _receive(self):
        c, _ = self.lsock.accept()
        buf = bytearray()
        while len(buf) < self.size:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
        self.got.append(bytes(buf))
        c.close()

    def guest_lines(self, host_ip):
        """The guest sends ``size`` bytes of /dev/urandom and fetches the blob, printing hashes."""
        return (f'dd if=/dev/urandom of=/tmp/g2h bs=64k count={self.size >> 16} 2>/dev/null\n'
                'echo "g2h=$(sha256sum /tmp/g2h | cut -c1-64)"\n'
                f'i=0; until nc {host_ip} {self.sink_port} </tmp/g2h; do i=$((i+1)); [ $i -gt 100 ] && break; '
                'sleep 0.5; done\n'
                f'wget -q -O /tmp/h2g http://{host_ip}:{self.http_port}/blob; echo "wget=$?"\n'
                'echo "h2g=$(sha256sum /tmp/h2g | cut -c1-64)"\n')

    def received(self, timeout=10):
        """What the guest sent (b"" if nothing arrived)."""
        self.rx.join(timeout)
        return self.got[0] if self.got else b""

    def close(self):
        self.httpd.shutdown()
        self.lsock.close()
