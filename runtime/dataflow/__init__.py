"""The open language's steps at run time: tables of texts and values computed from the cache (`tables`),
statistics with bootstrap intervals (`statistics`), step handlers (`steps`) and cubes (`cubes`)."""
