"""The explicit language switch for Gradio's own strings (upload zones, footer, toast titles).

Gradio's frontend translates those by its svelte-i18n locale, which it takes from the browser once at
load; our labels are switched by the server (app.ui.widgets.Labels), but the frontend's locale only changes
through its `changeLocale` export (what Gradio's own Settings panel calls). The script below imports that
same module instance (ES modules are singletons per URL; its hashed name is found among the loaded
resources) and sets the locale, then waits until the locale's messages are in (Gradio loads them lazily),
before the event's Python side shows the upload zones again and relabels our components.
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
      const footer = () => document.querySelector("footer")?.innerText ?? "";
      const before = footer();
      (await import(core)).changeLocale(locales[lang]);
      // changeLocale does not wait for the locale's lazily loaded messages: wait (bounded) until Gradio's own
      // footer shows them, so the upload zones shown next mount in the new language.
      for (let tries = 0; tries < 100 && footer() === before; tries++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } catch (error) {
      console.warn("could not switch Gradio's language", error);
    }
  }
  return lang;
}
""" % json.dumps(GRADIO_LOCALES)
