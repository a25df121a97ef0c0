"""Raw-dataset I/O: the four RecLM-gen pickles (``raw``), MovieLens conversion (``movielens``) and the
``prepare`` / ``validate`` CLIs. It sits below the teacher and the task layer and imports neither."""
