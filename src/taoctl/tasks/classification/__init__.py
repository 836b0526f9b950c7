"""classification (TAO classification_tf1 / makenet): train, evaluate, inference, prune, export."""
