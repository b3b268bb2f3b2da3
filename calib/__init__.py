"""cmcd_edge.calib stage."""
