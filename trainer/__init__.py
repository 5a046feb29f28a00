"""Training and evaluation of BridgeNet on label stores."""
