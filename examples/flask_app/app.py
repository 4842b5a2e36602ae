"""A small Flask app that owns the users and protects their pushsvc channels.

The seed write-up's scenario, made private: a logged-in user sees the answers pushed to
their own channel ``user:<id>``; nobody else can listen to it.  pushsvc asks this app
whether a stream may open (``PUSHSVC_AUTH_URL=http://<this app>/pushsvc/authorize``),
forwarding the browser's cookies, so the app's ordinary login session decides -- no JWT
to mint.  Events are published with ``pushsvc.publisher`` straight into pushsvc's Redis.

Run (pushsvc on :8000 with the same Redis, this app on :5000):

    PUSHSVC_REDIS_URL=redis://127.0.0.1:6379/0 PUSHSVC_PRIVATE_CHANNELS='user:*' \\
    PUSHSVC_AUTH_URL=http://127.0.0.1:5000/pushsvc/authorize \\
    PUSHSVC_CORS_ORIGINS=http://127.0.0.1:5000 pushsvc serve --bind 127.0.0.1:8000
    PUSHSVC_REDIS_URL=redis://127.0.0.1:6379/0 PUSHSVC_URL=http://127.0.0.1:8000 \\
    flask --app examples/flask_app/app.py run --port 5000
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, redirect, render_template_string, request, session

from pushsvc.publisher import Publisher

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "dev only: set FLASK_SECRET_KEY")
PUSHSVC_URL = os.environ.get("PUSHSVC_URL", "http://127.0.0.1:8000")
GRANT_SECONDS = int(os.environ.get("GRANT_SECONDS", "300"))  # the stream is re-authorised after it
_publisher: Publisher | None = None


def publisher() -> Publisher:
    global _publisher
    if _publisher is None:
        _publisher = Publisher()  # PUSHSVC_REDIS_URL
    return _publisher


PAGE = """<!doctype html><meta charset="utf-8"><title>answers</title>
{% if user %}
  <p>logged in as {{ user }} <form method="post" action="/logout"><button>log out</button></form>
  <div id="data">waiting for answers</div>
  <script type="module">
    import { PushStream } from "{{ pushsvc }}/pushsvc.js";
    const stream = new PushStream("{{ pushsvc }}/stream", { channels: ["user:{{ user }}"], withCredentials: true });
    stream.on("new_answers", (data) => {
      document.getElementById("data").textContent = data.question + " : " + data.value;
    });
    stream.onreset = () => location.reload();  // missed too much: render the state again
  </script>
{% else %}
  <form method="post" action="/login"><input name="user" placeholder="user id"><button>log in</button></form>
{% endif %}
"""


@app.get("/")
def index() -> str:
    return render_template_string(PAGE, user=session.get("user"), pushsvc=PUSHSVC_URL)


@app.post("/login")
def login() -> Any:
    user = request.form.get("user", "")
    if not user.isdigit():  # a real app checks a password here
        return jsonify(error="user ids are numbers"), 400
    session["user"] = user
    return redirect("/")


@app.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect("/")


@app.post("/pushsvc/authorize")
def authorize() -> Any:
    """pushsvc's callback: the browser's cookies came along, so `session` is the user's."""
    user = session.get("user")
    if user is None:
        return jsonify(error="not logged in"), 401
    return jsonify(channels=[f"user:{user}"], ttl=GRANT_SECONDS)


@app.post("/answer")
def answer() -> Any:
    """The logged-in user answers; the answer is pushed to their own channel."""
    user = session.get("user")
    if user is None:
        return jsonify(error="not logged in"), 401
    value = request.form.get("value", "")
    ids = publisher().publish(f"user:{user}", {"question": "which programming is the best?", "value": value},
                              type="new_answers")
    return jsonify(id=ids[0]), 202
