"""Reading and splitting the data sets: MovieLens tables, per-user sequences, session clickstreams."""
