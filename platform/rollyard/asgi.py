"""The ASGI entry point (Daphne): HTTP pages, REST API and static files through Django;
websockets through Channels, behind the origin check and session-or-token auth of
`accounts.ws_auth`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")
# Set Django up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from catalog.asgi import UploadSizeLimit  # noqa: E402
from accounts.ws_auth import WebsocketAuthMiddleware  # noqa: E402
from runs.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": UploadSizeLimit(django_asgi_app),  # dataset uploads: 413 as soon as the body passes the limit
        "websocket": WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
