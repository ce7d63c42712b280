"""Commands around the pipeline rather than in it: the offline demo and its generated stories, the data set
downloads, and plotting a run's metrics.csv."""
