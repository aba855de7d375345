"""The method study: its arms, its statistics and the generated data it runs on."""
