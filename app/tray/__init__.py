"""The Pinnace tray app: a QSystemTrayIcon front-end to one instance's host agent.

Pure logic (menu model, texts, settings form, reset summary) lives in modules without Qt imports
so it can be unit-tested; the widgets only render what those modules decide.
"""
