"""The web page at /ui: static files shipped in this package, served by the API itself.

No build step and no CDN: the page is plain HTML, CSS and ES modules under `static/`, read
from the installed package, so it works offline on a laptop and in an air-gapped cluster. The
routes only serve those files with a strict Content-Security-Policy, plus one small JSON
document (`/ui/config.json`) telling the page what this API instance offers.
"""

from .router import install_ui

__all__ = ["install_ui"]
