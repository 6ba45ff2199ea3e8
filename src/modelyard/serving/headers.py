"""Security headers of the pages the server renders itself: the console and the API docs.

Both run under one strict Content-Security-Policy: scripts, styles and connections only from the
server's own origin, no inline script or style, no frames, so markup that reaches a page (a logged
text, a description in the OpenAPI document) cannot run script in it.
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Headers of every console and docs page."""
