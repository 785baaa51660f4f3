"""The explicit language switch for Gradio's own strings (upload zones, footer, toast titles).

Gradio's frontend translates those by its svelte-i18n locale, which it takes from the browser once at
load; our labels are switched by the server (app.ui.widgets.Labels), but the frontend's locale only changes
through its `changeLocale` export (what Gradio's own Settings panel calls). The script below imports that
same module instance (ES modules are singletons per URL; its hashed name is found among the loaded
resources) and sets the locale, before the event's Python side relabels our components.
"""

from __future__ import annotations

import json

# Our language -> Gradio's locale name (its bundled translation tables).
GRADIO_LOCALES = {"en": "en", "zh": "zh-CN"}

SET_GRADIO_LOCALE_JS = """
async (lang) => {
  const locales = %s;
  const core = performance.getEntriesByType("resource").map((entry) => entry.name)
    .find((name) => /\\/assets\\/core-[^/]*\\.js$/.test(name));
  if (core && locales[lang]) {
    try {
      (await import(core)).changeLocale(locales[lang]);
    } catch (error) {
      console.warn("could not switch Gradio's language", error);
    }
  }
  return lang;
}
""" % json.dumps(GRADIO_LOCALES)
