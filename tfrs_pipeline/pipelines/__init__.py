"""End-to-end runs: each turns a RunConfig into trained, evaluated, exported models."""
