"""The framework-free core of pushsvc: opening a stream, pumping its body, accepting a
publish, rendering an error.  Both doors -- the pure-ASGI fast door (`pushsvc.fastpath`)
and the Quart routes -- call it; nothing here imports Quart, werkzeug or Hypercorn
(tests/unit/test_core_imports.py checks)."""
