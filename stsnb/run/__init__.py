"""Orchestration: the book's pages (pages), chapter 04's batch of pages (batch) and where its
jobs run (jobs), the whole book (book), the chapters' helpers (notebook), the command line (cli).
Nothing in a stage imports this package."""
