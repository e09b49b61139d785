//! lb-daemon library
