"""The DepView browser app (Dash): ``create_app`` / ``run`` live in :mod:`viewer.app.main`.

Layout and callbacks are split per feature (``callbacks/``); component ids live in :mod:`ids`;
:mod:`viewmodel` turns a core graph into Cytoscape elements; :mod:`state` keeps models on the
server, per browser session.
"""
