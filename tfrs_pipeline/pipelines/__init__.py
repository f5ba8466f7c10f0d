"""End-to-end runs: each turns its task's config (``tfrs_pipeline.config``) into trained, evaluated, exported models."""
