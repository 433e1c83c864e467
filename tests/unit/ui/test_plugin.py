"""The plugin file registers the view without loading it: Airflow's other components import it too."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.kafka_broker import REPO


def test_plugin_import_loads_nothing_of_the_view():
    probe = (
        f"import sys; sys.path.insert(0, {str(REPO / 'plugins')!r}); import flywheel_models as p; "
        "plugin = p.FlywheelModelsPlugin; app = plugin.fastapi_apps[0]; view = plugin.external_views[0]; "
        "loaded = sorted(m for m in ('flywheel.ui.app', 'flywheel.ui.data', 'flywheel.models.store', 'confluent_kafka', 'boto3') "
        "if m in sys.modules); "
        "print(app['url_prefix'], view['name'], view['href'], view['url_route'], type(app['app']).__name__, loaded)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "/flywheel Models flywheel/models models LazyASGIApp []"


def _run(coro) -> None:
    """Drive a coroutine that never suspends, without needing (or disturbing) an event loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("the coroutine suspended")


def test_the_lazy_app_builds_the_view_on_first_request():
    from flywheel.ui.lazy import LazyASGIApp

    calls = []

    async def inner(scope, receive, send):
        calls.append(scope["path"])

    def factory(**kwargs):
        calls.append(kwargs)
        return inner

    import types

    module = types.ModuleType("fake_ui_factory")
    module.create = factory
    sys.modules["fake_ui_factory"] = module
    app = LazyASGIApp("fake_ui_factory:create", mount_prefix="/x")
    assert calls == []
    _run(app({"type": "http", "path": "/a"}, None, None))
    _run(app({"type": "http", "path": "/b"}, None, None))
    assert calls == [{"mount_prefix": "/x"}, "/a", "/b"]
