"""Books: a source file read into chapters, a parent record over one narration job per chapter, and the assembly
of the finished chapters into one M4B."""
