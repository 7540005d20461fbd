"""Gradio demo app: one tab per registered capability, plus an About tab.

This package imports gradio only in `vqkit.demos.app`, so registering a tab stays cheap.
"""

from vqkit.demos.tabs import ABOUT_TAB_TITLE, TabEntry, list_tabs, register_tab, unregister_tab

__all__ = ["ABOUT_TAB_TITLE", "TabEntry", "list_tabs", "register_tab", "unregister_tab"]
