"""Features built from the data set's schema: value arrays, lookup tables and Keras preprocessing."""
