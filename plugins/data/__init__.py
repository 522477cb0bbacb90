"""Data: datasets (synthreid, the Market-1501 subset), samplers and image decoding."""
