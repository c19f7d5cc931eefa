"""Step-level PRM-guided search: the methods and their registry (`methods`), the HF step
policy (`policy`) and the PRM step scorers (`scoring`); `tdrm search` runs them."""
