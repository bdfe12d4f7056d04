"""twistd plugins of studios-gateway; the real modules are imported only when used."""

from twisted.application.service import ServiceMaker

studios_gateway = ServiceMaker(
    "studios-gateway",
    "studios_gateway.tap",
    "Studios gateway: tunnels, HTTP and SSH proxy, management, in one process.",
    "studios-gateway",
)

studios_connect = ServiceMaker(
    "studios-connect",
    "studios_gateway.studio.tap",
    "Studios connect client: holds a studio's tunnel to the gateway.",
    "studios-connect",
)
