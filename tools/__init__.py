"""`python -m tools.NAME` entry points of a checkout; the commands live in tf_explainer/cli and
are installed as the `tf-explainer` console script. Not part of the installed package."""
