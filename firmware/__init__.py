"""Host-side firmware: the UART host runtime and the image formats."""
