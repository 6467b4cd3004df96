"""What a run stores and reads back: the content-addressed `cache`, the xarray/zarr cubes (`cube`,
`cubes_extra`), the manifests and digests that detect damage (`integrity`), the store check and
garbage collection of `intro cache verify` and `gc` (`storecheck`), `export` of a run's cubes, and `resultdiff`, the comparison of two runs.
"""
