"""Quality: bits per byte and perplexity, and the context-use probe of a hierarchy."""
