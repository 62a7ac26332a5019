"""One router per concern; isol8.server.app includes them."""
