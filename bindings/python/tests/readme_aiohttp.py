import asyncio, logging, sys
from aiohttp import web
import lameduck, lameduck.adapters

async def hello(request):
    return web.Response(text="hello\n")

async def main():
    app = web.Application(handler_args={"access_log": None})      # no access log
    app.add_routes([web.get("/", hello)])
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    await lameduck.run_async(lameduck.adapters.aiohttp_app(app, "127.0.0.1", port), drain_delay=2.0, period=10.0)

logging.basicConfig(level=logging.INFO)                 # lameduck logs to logging.getLogger("lameduck")
asyncio.run(main())
