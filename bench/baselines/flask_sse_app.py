"""flask-sse baseline (run under gunicorn -k gevent): one Redis pub/sub per client, as flask-sse does."""

import os

from flask import Flask, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish():
    body = request.get_json()
    sse.publish(body["data"], channel=body.get("channel", "sse"))
    return {"ok": True}, 202
