"""What a run stores and reads back: the content-addressed `cache`, the xarray/zarr cubes (`cube`,
`training_cube`), the manifests and digests that detect damage (`integrity`), `intro cache verify` and
`intro cache gc` (`storecheck`), and `export` of a run's cubes as tables.
"""
