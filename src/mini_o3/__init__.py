"""mini-o3: vision-language agents that search high-resolution images by zooming."""

__version__ = "0.1.0"
