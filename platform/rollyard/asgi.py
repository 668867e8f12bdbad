"""The ASGI entry point (Daphne): HTTP pages, REST API and static files through Django;
websockets through Channels, behind the origin check and session-or-token auth of
`accounts.ws_auth`."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")
# Set Django up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from catalog.asgi import UploadSizeLimit  # noqa: E402
from accounts.ws_auth import WebsocketAuthMiddleware  # noqa: E402
from runs.routing import websocket_urlpatterns  # noqa: E402

# Every view and what it imports (Django would load them on the first request), then the
# collector stops scanning what is loaded: some 170,000 objects of Django, DRF and the
# engine's registries that live as long as the process. A full collection over them
# took 100-150 ms on a 2-core machine, and one fell inside a request every few dozen
# (bench.dashboard_lists: the p99 of the runs list filtered by status).
get_resolver().url_patterns
gc.freeze()

application = ProtocolTypeRouter(
    {
        "http": UploadSizeLimit(django_asgi_app),  # dataset uploads: 413 as soon as the body passes the limit
        "websocket": WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
