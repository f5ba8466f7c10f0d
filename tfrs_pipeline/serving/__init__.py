"""Serving: a TF-Serving-compatible model server and the clients that query it.

Nothing here imports training code; the server loads SavedModels and speaks TF Serving's protocol.
"""
