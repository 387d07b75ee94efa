#!/bin/sh
# MLflow's Kubernetes backend shell-quotes every token of an entry point's command, then runs the
# tokens without a shell: a value like 'train.epochs=3 data.batch_size=32', or an empty '', would
# reach the program with its quotes. eval joins the tokens and lets the shell undo that quoting.
# Only for that backend: under a shell the arguments are unquoted already.
eval exec "$@"
