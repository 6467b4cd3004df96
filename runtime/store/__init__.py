"""What a run stores and reads back: the content-addressed `cache`, the xarray/zarr cubes (`cube`,
`cubes_extra`), the manifests and digests that detect damage (`integrity`), `intro cache verify` and
`intro cache gc` (`storecheck`), `export` of a run's cubes, and `resultdiff`, the comparison of two runs.
"""
