"""Step 4, streaming: chunk-by-chunk decoding of whole utterances (``runner``) and of live streams (``live``),
decoding strategies (``decoding``) and word timings (``words``)."""
