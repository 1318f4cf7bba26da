"""A DynamoDB API server for local runs and tests: moto, single-threaded.

moto's stock `moto_server` handles requests on many threads and loses
updates under concurrency (two transactions can both pass a condition).
Serving one request at a time makes every conditional write atomic, as
DynamoDB's are, so concurrency tests prove something.

usage: python scripts/dynamodb_emulator.py [PORT]   (default 8000; 0 = any free port,
the chosen port is printed as `listening on PORT`)
"""

import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import make_server


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=False, processes=1)
    print(f"listening on {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
