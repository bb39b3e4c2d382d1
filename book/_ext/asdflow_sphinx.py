"""Small Sphinx fixes for the asdflow book.

Jupyter Book 1.x with Sphinx 7.4 registers the inline scripts of
sphinx-thebe and sphinx-togglebutton twice on each page; the second
``const THEBE_JS_URL`` declaration is a JavaScript error in the browser.
This extension drops repeated script entries when a page is written.
"""

from __future__ import annotations


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for script in scripts:
        # The same inline script arrives once with filename None and once with "".
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), repr(sorted(getattr(script, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
