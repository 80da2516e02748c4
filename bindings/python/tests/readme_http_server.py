import http.server, logging, sys
import lameduck, lameduck.adapters

class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"                       # keep-alive
    disable_nagle_algorithm = True                      # headers and body are two writes
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\n")
    def log_message(self, *args): pass                  # no access log

logging.basicConfig(level=logging.INFO)                 # lameduck logs to logging.getLogger("lameduck")
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
# bind_and_activate=False: the adapter binds with lameduck.listen(), so an upgrade hands the socket on
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hello, bind_and_activate=False)
lameduck.run(lameduck.adapters.http_server(srv), period=5.0)
