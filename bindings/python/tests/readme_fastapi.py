import asyncio, logging, sys
from fastapi import FastAPI
import lameduck, lameduck.asgi

app = FastAPI()

@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world", "state": str(runner.state)}    # the Runner below; or lameduck.current_runner()

logging.basicConfig(level=logging.INFO)                 # lameduck logs to logging.getLogger("lameduck")
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
runner = lameduck.asgi.uvicorn(app, "127.0.0.1", port, config={"log_level": "warning"}, drain_delay=2.0, period=10.0)
asyncio.run(runner.run_async())                         # SIGTERM: drain, finish, lifespan shutdown, exit 0
