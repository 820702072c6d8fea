module imagesim.local/clusterlab/pause

go 1.24.0
