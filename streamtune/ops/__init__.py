"""The compute kernels under the model: the CPU RNN-T loss (``rnnt_loss``) and the fused joint (``joint``)."""
