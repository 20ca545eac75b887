"""tf-explainer: explainer networks that paraphrase a frozen CNN's conv-layer as object parts."""
