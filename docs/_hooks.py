"""MkDocs hook: docstrings write cross-references in reStructuredText roles
(``:class:`Graph```); on the site they read as plain code."""

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>|`)")


def on_page_content(html, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    return ROLE.sub("", html)
